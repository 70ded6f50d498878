"""Tests of the S3 client (boxbox/s3) against SeaweedFS and a fault-injecting proxy."""
