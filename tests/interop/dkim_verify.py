"""Verifies DKIM signatures with dkimpy, an implementation independent of volley's.

usage: dkim_verify.py DIR RSA_PUBKEY_B64_FILE ED25519_PUBKEY_B64_FILE
Every DKIM-Signature of every DIR/*.eml must verify; the key record is served by a
stub DNS function (selector "rsa" or "ed": that key; any other selector: the key of the
signature's algorithm). Prints one line per file and exits 1 if any fails, 3 if dkimpy
is missing.
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



def record(kind):
    return f"v=DKIM1; k={kind}; p={keys[kind]}".encode()


for path in sorted(glob.glob(f"{directory}/*.eml")):
    message = open(path, "rb").read()
    head = message.split(b"\r\n\r\n", 1)[0]
    count = sum(1 for line in head.split(b"\r\n") if line.lower().startswith(b"dkim-signature:"))
    guess = "ed25519" if b"a=ed25519-sha256" in message[:600] else "rsa"

    def lookup(name, timeout=5):
        if name.startswith(b"rsa."):
            return record("rsa")
        if name.startswith(b"ed."):
            return record("ed25519")
        return record(guess)

    checker = dkim.DKIM(message)
    results = [checker.verify(idx=i, dnsfunc=lookup) for i in range(count)]
    ok = count > 0 and all(results)
    print(path.rsplit("/", 1)[-1], f"{count} signature(s)", "ok" if ok else f"FAILED {results}")
    failed += not ok
sys.exit(1 if failed else 0)
