"""The `zerounlearn` command: the API from a terminal (see `zerounlearn --help`)."""
