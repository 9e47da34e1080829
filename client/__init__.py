"""Client SDK, CLI and the wire/record schemas shared by every part of contrail."""
