"""Talking to Alipay: one transport for every outbound call, and the Open Platform and legacy clients."""
