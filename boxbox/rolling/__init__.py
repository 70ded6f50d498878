"""The delta engine: block layout, signatures, delta search and patch (pure Python, C-speed primitives)."""
