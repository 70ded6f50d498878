"""Client internals: exclude rules, the location scanner, directory records and the state file."""
