"""`boxbox quickstart` internals: the files of a one-machine setup, and the store server it starts.

`home` makes (or finds) the CA, certificates, keys file, disc set, account and configs;
`launch` knows how this boxbox was started and runs the store server in the background.
The role module `boxbox.roles.quickstart` puts them together and talks to the user.
"""
