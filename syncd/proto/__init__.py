"""The syncd protocol without I/O: messages, codec, signing, validation, link states."""
