"""Remote infer workers: CURVE keys and security (`keys.py`, `security.py`) and the identity of
the model both ends must run (`identity.py`)."""
