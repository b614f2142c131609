"""Bytes and crypto: form and charset decoding, amounts and times, signing, keys, the gateway response scanner."""
