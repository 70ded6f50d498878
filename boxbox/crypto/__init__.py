"""Client-side keys and sealing: the store never sees a key."""
