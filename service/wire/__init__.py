"""Every request, response and export record, as msgspec Structs.

One module per pipeline stage; `base` holds what they share. The Structs are the
validator, the wire type and (through Litestar) the OpenAPI schema at once.
"""
