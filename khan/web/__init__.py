"""HTTP: the aiohttp server and its limits, the routes over bytes rendered once per poll, TLS and authentication.
The only user of aiohttp's server."""
