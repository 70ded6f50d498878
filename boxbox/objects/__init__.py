"""The store's object formats: file objects, directory objects, attribute records.

Client code seals and opens them with the keys; the store reads and edits only their clear
parts through the keyless views here (`read_file_layout`, `FileObjectWriter`, `Directory`).
"""
