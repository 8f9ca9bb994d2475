"""The environment variables of mistralrs's torch.distributed communicators, as collective manifests declare them.

Kept apart from :mod:`._rendezvous` because manifests import it on every
``mistralrs plugins list``: constants only, nothing to build at import.
"""

from __future__ import annotations

from mistralrs_torch.features import EnvVar

COLLECTIVE_TIMEOUT_VAR = "MISTRALRS_COLLECTIVE_TIMEOUT"
RENDEZVOUS_TIMEOUT_VAR = "MISTRALRS_RENDEZVOUS_TIMEOUT"
#: Seconds. gloo's own default is 30 minutes; a dead peer should surface sooner than that, yet a rank that is
#: still loading weights while its peers already wait in the first collective must not be declared dead.
DEFAULT_TIMEOUT = 300.0
#: What a collective plugin declares in its manifest (doctor's unknown-variable check reads them there).
COLLECTIVE_ENV_VARS = (
    EnvVar(COLLECTIVE_TIMEOUT_VAR, f"seconds a collective waits for its peers before it fails with CollectiveError "
                                   f"(default {DEFAULT_TIMEOUT:g})"),
    EnvVar(RENDEZVOUS_TIMEOUT_VAR, f"seconds the ranks wait for each other to join at start-up "
                                   f"(default {DEFAULT_TIMEOUT:g})"),
)
