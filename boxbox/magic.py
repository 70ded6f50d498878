"""Every magic number of every boxbox binary format, one per line.

A retired value stays listed as reserved so it is never reused. A test checks that all
values are distinct. Magics are 4 ASCII bytes so a hex dump names the format.
"""

KEYS_FILE = b"BXK1"  # reserved: the keys file is raw random bytes, no header
FILE_OBJECT = b"BXFO"  # encrypted file object (client-made, stored on the server)
FILE_INDEX = b"BXFI"  # block index at the end of a file object
DIRECTORY_OBJECT = b"BXDO"  # directory object
ATTRIBUTES = b"BXAT"  # sealed attributes record
SIGNATURE = b"BXSG"  # rolling: block signature of a file
DELTA = b"BXDL"  # rolling: delta instruction stream
RAID_HEADER = b"BXRF"  # raidfile: per-file metadata (length, stripe checksums)
WIRE_HELLO = b"BXWP"  # wire: protocol greeting
ACCOUNT_INFO = b"BXAI"  # store: per-account info file
ACCOUNT_DB = b"BXAD"  # store: account database
CLIENT_STATE = b"BXCS"  # client: saved directory records and id map
PATCH_OBJECT = b"BXRP"  # store: reverse patch (older version against a newer one)
HOUSEKEEPING_STATE = b"BXHK"  # store: per-account housekeeping state (dirty marker, retention clock)
HOUSEKEEPING_JOURNAL = b"BXHJ"  # store: what a housekeeping pass is changing, until it is done
S3_TRAILER = b"BXST"  # store on S3: payload length and SHA-256 after every object
S3_PACK = b"BXSP"  # store on S3: a pack of small new objects, index at the end

ALL = {name: value for name, value in dict(globals()).items() if name.isupper() and isinstance(value, bytes)}
