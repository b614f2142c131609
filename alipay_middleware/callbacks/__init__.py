"""The sans-I/O callback core: the notify, return, confirmation and replay flows and the answers they give."""
