"""Reverse-proxy mode (--upstream): an application behind the site's files.

`target` reads the --upstream URL; `pool` keeps keep-alive HTTP/1.1 connections to it (h11);
`headers` holds the proxy's header rules (RFC 9110 section 7.6); `hints` turns the application's
`Link: rel=preload` headers into hints and pushes, and remembers them per path; `proxy` forwards
one request, streaming both bodies. Only a server started with --upstream imports any of it
beyond `target` (which Config uses to check the URL).
"""
