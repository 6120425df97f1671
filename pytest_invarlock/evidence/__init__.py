"""Evidence packs in InvarLock's evidence-pack-v1 format: a run's verdict, records and certificates, checksummed and signed.

`layout` writes InvarLock's control files (checksums, manifest, Ed25519 signature) without importing
InvarLock, `pack` builds DIR and DIR.tar.gz from a run directory (the controller may call it),
`environment` says where the records were produced, `audit` holds the campaign checks (record seals,
records against certificates, Phase 0), `verify` is the command that runs InvarLock's own verifier and
then `audit`, `keys` makes and loads keypairs.
"""
