"""The protocol engines: HTTP/2 and HTTP/1.1 without sockets, and the per-request layer both share."""
