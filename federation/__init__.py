"""The domain of the CCC-exemption federation: pure rules over values and bytes.

Nothing in this package imports ``grpc`` or does network, database or clock I/O of its own;
``node`` calls into it.
"""
