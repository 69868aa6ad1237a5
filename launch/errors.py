"""Launch failures, each with words a clinician understands and detail kept for the logs only."""

from __future__ import annotations


class LaunchError(Exception):
    """Shown as a page in plain words with a correlation id; ``detail`` goes to the server log only."""

    status = 400
    title = "The Shared Care Record could not be opened"
    message = "Something went wrong while opening the record. Open it again from your clinical system."
    audit_code = "launch-error"

    def __init__(self, detail: str = "", message: str | None = None) -> None:
        super().__init__(detail or self.audit_code)
        self.detail = detail
        if message:
            self.message = message


class UnknownIssuer(LaunchError):
    status = 403
    title = "This system is not connected to the Shared Care Record"
    message = (
        "The Shared Care Record was opened by a clinical system it is not registered with, so it cannot "
        "sign you in. Open it from the button in your own clinical system, or contact the service desk."
    )
    audit_code = "unknown-issuer"


class MissingLaunchParameters(LaunchError):
    title = "The launch was incomplete"
    message = "Your clinical system did not pass the details the record needs. Open it again from the toolbar."
    audit_code = "missing-launch-parameters"


class DiscoveryFailed(LaunchError):
    status = 502
    title = "Your clinical system's sign-in service did not respond"
    message = "The record could not contact your clinical system's sign-in service. Try again in a minute."
    audit_code = "discovery-failed"


class DiscoveryUnreachable(DiscoveryFailed):
    """No answer at all (connection refused, timed out): may pass; unlike an answer that lacks an endpoint."""


class AccessDenied(LaunchError):
    status = 403
    title = "Access to the record was not allowed"
    message = "Sign-in was cancelled or access was not allowed, so the record was not opened."
    audit_code = "access-denied"


class BadState(LaunchError):
    title = "This sign-in link has expired or was already used"
    message = "For your security each sign-in link works once. Open the record again from your clinical system."
    audit_code = "bad-state"


class TokenError(LaunchError):
    status = 502
    title = "Sign-in could not be completed"
    message = (
        "Your clinical system did not complete the sign-in. Open the record again; if it keeps "
        "happening, contact the service desk."
    )
    audit_code = "token-error"


class InvalidIdToken(LaunchError):
    status = 502
    title = "Your identity could not be confirmed"
    message = "The sign-in response could not be verified, so the record was not opened. Contact the service desk."
    audit_code = "invalid-id-token"


class MissingScope(LaunchError):
    status = 403
    title = "Your clinical system did not grant enough access"
    message = "The record needs permission to identify you and read this patient's details, which was not granted."
    audit_code = "missing-scope"


class SessionExpired(LaunchError):
    status = 401
    title = "Your Shared Care Record session has ended"
    message = (
        "For your security the session ends after a period without use. Open the record again from "
        "your clinical system."
    )
    audit_code = "session-expired"


class RelaunchRequired(LaunchError):
    status = 401
    title = "Please open the record again"
    message = "Your access to the record has expired and could not be renewed. Open it again from your clinical system."
    audit_code = "relaunch-required"


class IdentityUnresolved(LaunchError):
    status = 502
    title = "Your user details could not be found"
    message = (
        "Your clinical system did not return your user details, so access cannot be checked. Contact the service desk."
    )
    audit_code = "identity-unresolved"


class SourceError(LaunchError):
    status = 502
    title = "Your clinical system could not provide the patient's details"
    message = "The patient's details could not be read from your clinical system. Try again in a minute."
    audit_code = "source-error"
