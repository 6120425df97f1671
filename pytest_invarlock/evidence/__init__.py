"""Signed evidence packs: a run directory's verdict, records and certificates, checksummed and signed.

Torch-free (the controller builds packs; anyone verifies them): `manifest` describes a run, `dsse`
signs and checks the manifest in a DSSE envelope with Ed25519, `pack` writes DIR and DIR.tar.gz,
`verify` checks a pack against a public key the reader supplies, `keys` makes a keypair.
"""
