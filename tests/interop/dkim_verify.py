"""Verifies DKIM signatures with dkimpy, an implementation independent of volley's.

usage: dkim_verify.py DIR RSA_PUBKEY_B64_FILE ED25519_PUBKEY_B64_FILE
Every DIR/*.eml must verify; the key record is served by a stub DNS function.
Prints one line per file and exits 1 if any fails, 3 if dkimpy is missing.
"""
import glob
import sys

try:
    import dkim
    import nacl  # noqa: F401  (dkimpy needs it for ed25519)
except ImportError as e:
    print(f"dkimpy or pynacl missing: {e}")
    sys.exit(3)

directory, rsa_file, ed_file = sys.argv[1:4]
keys = {"rsa": open(rsa_file).read().strip(), "ed25519": open(ed_file).read().strip()}
failed = 0
for path in sorted(glob.glob(f"{directory}/*.eml")):
    message = open(path, "rb").read()
    kind = "ed25519" if b"a=ed25519-sha256" in message[:600] else "rsa"
    record = f"v=DKIM1; k={kind}; p={keys[kind]}".encode()
    ok = dkim.verify(message, dnsfunc=lambda name, timeout=5: record)
    print(path.rsplit("/", 1)[-1], kind, "ok" if ok else "FAILED")
    failed += not ok
sys.exit(1 if failed else 0)
