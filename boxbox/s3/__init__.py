"""A standard-library S3 client for the store's object-store backend (docs/S3.md)."""
