"""One module per role; each exports `add_arguments(parser)` and `main(args) -> int`."""
