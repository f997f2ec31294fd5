"""HTTP/1.1, sans-I/O: the server side of a connection (``h1``)."""
