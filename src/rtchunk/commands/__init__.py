"""The ``rtchunk`` subcommands, one module each: parse a frozen config, call the library, print where."""
