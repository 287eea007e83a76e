"""The wire format between stages (`messages`) and the socket wiring (`transport`)."""
