"""Transports: socket tasks behind one interface (:mod:`coapio.transports.base`), one module each."""
