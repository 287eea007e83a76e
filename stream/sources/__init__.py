"""Where frames come from: decoding files and streams, live sources, the sources config file.

`spec` (SourceSpec), `decode` (open, decode, the decoder-side model window), `live` (reconnect,
watchdog, newest-frame slot), `config_file` (TOML).
"""
