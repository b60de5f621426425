"""Why a hand-over (or another agent request) was refused: typed reasons
shared by the agent, the protocol and the client."""

from __future__ import annotations


class Refused(Exception):
    """A request the agent will not carry out. `code` is stable (the protocol's
    "error" field); the message says what was seen, in one line."""

    code = "refused"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _reason(code: str, doc: str) -> type[Refused]:
    return type(code.title().replace("_", ""), (Refused,), {"code": code, "__doc__": doc})


NotTcp = _reason("not_tcp", "A descriptor is not a TCP socket.")
NotConnected = _reason("not_connected", "A socket is not connected.")
WrongFamily = _reason("wrong_family", "The two connections use different address families.")
NotEstablished = _reason("not_established", "A connection is not in ESTABLISHED state.")
BuffersNotEmpty = _reason("buffers_not_empty", "Data is still queued in a socket.")
OptionsIncompatible = _reason(
    "options_incompatible", "TCP options differ in a way the data plane cannot reconcile."
)
TimestampsUnknown = _reason(
    "timestamps_unknown", "A peer's TSval was never seen: register the flow first."
)
NoRoute = _reason("no_route", "No route or neighbour entry towards a peer.")
HairpinUnsafe = _reason(
    "hairpin_unsafe", "Both peers are reached through an interface where XDP_TX would stall."
)
TableFull = _reason("table_full", "The data plane's splice table is full.")
StateMoved = _reason("state_moved", "A socket's state changed during the hand-over.")
AlreadySpliced = _reason("already_spliced", "An entry for this flow exists already.")
NotFound = _reason("not_found", "No such splice.")
BadRequest = _reason("bad_request", "The request is malformed.")
Internal = _reason("internal", "The agent failed; the sockets were given back untouched.")
WrongNamespace = _reason(
    "wrong_namespace", "A socket belongs to another network namespace than the agent's."
)
NotLocal = _reason("not_local", "A socket's local address is not an address of this host.")
SameConnection = _reason("same_connection", "The two descriptors are one connection.")
InRepair = _reason("in_repair", "A socket arrived in TCP repair mode.")
TcpAuth = _reason("tcp_auth", "A connection signs its segments (TCP-MD5 or TCP-AO).")
NotOwner = _reason("not_owner", "The flow or splice belongs to another user.")
LimitReached = _reason("limit_reached", "A limit of the agent or a per-user quota is reached.")

REASONS: dict[str, type[Refused]] = {
    cls.code: cls
    for cls in (
        NotTcp,
        NotConnected,
        WrongFamily,
        NotEstablished,
        BuffersNotEmpty,
        OptionsIncompatible,
        TimestampsUnknown,
        NoRoute,
        HairpinUnsafe,
        TableFull,
        StateMoved,
        AlreadySpliced,
        NotFound,
        BadRequest,
        Internal,
        WrongNamespace,
        NotLocal,
        SameConnection,
        InRepair,
        TcpAuth,
        NotOwner,
        LimitReached,
    )
}


def from_code(code: str, message: str) -> Refused:
    return REASONS.get(code, Refused)(message)
