"""Authorisation rules for ``m.room.member`` events (rooms/v10-v12, rule
"If type is m.room.member"; rule 5 in v12 numbering).

Role: decide membership transitions (join, invite incl. third-party invites,
leave/kick, ban/unban, knock) against the supplied room state.

Invariants:
* Every path either returns (allow) or raises :class:`AuthError` (reject);
  there is no implicit fall-through to the generic rules, matching the spec
  where every membership branch ends in allow or reject.
* Power comparisons use :func:`get_power_level`, so v12 creators (infinite
  power) can always kick/ban and can never be kicked/banned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json
from unpaddedbase64 import decode_base64

from homeserver.events.auth_base import (
    JOIN_RULES,
    THIRD_PARTY_INVITE,
    AuthError,
    StateEvents,
    get_named_level,
    get_power_level,
    membership_of,
    power_levels_content,
)
from homeserver.events.identifiers import domain_of

if TYPE_CHECKING:
    from homeserver.events.model import Event

__all__ = ["check_membership"]

SignedByCheck = Callable[["Event", str], bool]


def _has_signature_from(event: Event, server_name: str) -> bool:
    sigs = event.signatures.get(server_name)
    return isinstance(sigs, dict) and bool(sigs)


def check_membership(
    event: Event,
    auth_events: StateEvents,
    create: Event,
    is_signed_by: SignedByCheck | None,
) -> None:
    rv = event.room_version
    target = event.state_key
    membership = event.content.get("membership")
    if target is None or "membership" not in event.content:
        raise AuthError("member event needs a state_key and content.membership")

    authoriser = event.content.get("join_authorised_via_users_server")
    if rv.restricted_join_rule and "join_authorised_via_users_server" in event.content:
        # The signature itself can only be verified with the authorising
        # server's keys; callers that have them pass is_signed_by.  Without
        # it we at least require the signature to be present.
        try:
            auth_server = domain_of(authoriser) if isinstance(authoriser, str) else ""
        except ValueError:
            auth_server = ""
        signed = is_signed_by or _has_signature_from
        if not auth_server or not signed(event, auth_server):
            raise AuthError("event is not signed by the server of join_authorised_via_users_server")

    sender = event.sender
    sender_membership = membership_of(sender, auth_events)
    target_membership = membership_of(target, auth_events)
    join_rules = auth_events.get((JOIN_RULES, ""))
    # No join rules event: treat as "invite" (Synapse does the same), which
    # only lets already invited/joined users (re)join.
    join_rule = join_rules.content.get("join_rule", "invite") if join_rules is not None else "invite"
    pl_content = power_levels_content(auth_events)

    def level(user: str) -> int | float:
        return get_power_level(user, auth_events, create)

    if membership == "join":
        _check_join(event, auth_events, create, join_rule, sender_membership, pl_content, level)
    elif membership == "invite":
        if "third_party_invite" in event.content:
            _check_third_party_invite(event, auth_events, target_membership)
            return
        if sender_membership != "join":
            raise AuthError("inviter is not joined to the room")
        if target_membership in ("join", "ban"):
            raise AuthError(f"invitee is already {target_membership}")
        if level(sender) < get_named_level("invite", pl_content, 0):
            raise AuthError("inviter does not have the invite power level")
    elif membership == "leave":
        if sender == target:
            if target_membership not in ("invite", "join", "knock"):
                raise AuthError(f"cannot leave from membership {target_membership!r}")
            return
        if sender_membership != "join":
            raise AuthError("kicker is not joined to the room")
        if target_membership == "ban" and level(sender) < get_named_level("ban", pl_content, 50):
            raise AuthError("unbanning requires the ban power level")
        if not (level(sender) >= get_named_level("kick", pl_content, 50) and level(target) < level(sender)):
            raise AuthError("insufficient power to kick")
    elif membership == "ban":
        if sender_membership != "join":
            raise AuthError("banner is not joined to the room")
        if not (level(sender) >= get_named_level("ban", pl_content, 50) and level(target) < level(sender)):
            raise AuthError("insufficient power to ban")
    elif membership == "knock" and rv.knock_join_rule:
        knockable = ("knock", "knock_restricted") if rv.knock_restricted_join_rule else ("knock",)
        if join_rule not in knockable:
            raise AuthError("room does not allow knocking")
        if sender != target:
            raise AuthError("cannot knock on behalf of another user")
        if sender_membership in ("ban", "invite", "join"):
            raise AuthError(f"cannot knock from membership {sender_membership!r}")
    else:
        raise AuthError(f"unknown membership {membership!r}")


def _check_join(
    event: Event,
    auth_events: StateEvents,
    create: Event,
    join_rule: object,
    sender_membership: str,
    pl_content: dict[str, Any],
    level: Callable[[str], int | float],
) -> None:
    rv = event.room_version
    target = event.state_key
    # The creator's own first join, straight after the create event.
    # Spec: "the state_key is the sender of the m.room.create" (v11+) or
    # content.creator (v10); additional creators do not get this shortcut.
    prev = event.prev_event_ids
    creator = create.sender if rv.implicit_room_creator else create.content.get("creator")
    if len(prev) == 1 and prev[0] == create.event_id and target == creator:
        return
    if event.sender != target:
        raise AuthError("cannot join on behalf of another user")
    if sender_membership == "ban":
        raise AuthError("user is banned from the room")
    restricted = ("restricted", "knock_restricted") if rv.knock_restricted_join_rule else ("restricted",)
    if join_rule == "invite" or (join_rule == "knock" and rv.knock_join_rule):
        if sender_membership in ("invite", "join"):
            return
        raise AuthError("room is invite-only and user is not invited")
    if rv.restricted_join_rule and join_rule in restricted:
        if sender_membership in ("join", "invite"):
            return
        authoriser = event.content.get("join_authorised_via_users_server")
        if not isinstance(authoriser, str):
            raise AuthError("restricted join without join_authorised_via_users_server")
        if membership_of(authoriser, auth_events) != "join":
            raise AuthError("authorising user is not joined to the room")
        if level(authoriser) < get_named_level("invite", pl_content, 0):
            raise AuthError("authorising user cannot invite")
        return
    if join_rule == "public":
        return
    raise AuthError(f"join rule {join_rule!r} does not allow joining")


def _check_third_party_invite(event: Event, auth_events: StateEvents, target_membership: str) -> None:
    if target_membership == "ban":
        raise AuthError("invitee is banned")
    tpi = event.content.get("third_party_invite")
    signed = tpi.get("signed") if isinstance(tpi, dict) else None
    if not isinstance(signed, dict):
        raise AuthError("third_party_invite has no signed object")
    mxid, token = signed.get("mxid"), signed.get("token")
    if not isinstance(mxid, str) or not isinstance(token, str):
        raise AuthError("third_party_invite.signed needs mxid and token")
    if mxid != event.state_key:
        raise AuthError("third_party_invite mxid does not match state_key")
    invite_event = auth_events.get((THIRD_PARTY_INVITE, token))
    if invite_event is None:
        raise AuthError("no m.room.third_party_invite for this token")
    if invite_event.sender != event.sender:
        raise AuthError("sender does not match the third party invite's sender")
    if _third_party_signature_ok(signed, invite_event.content):
        return
    raise AuthError("no valid signature on third_party_invite.signed")


def _third_party_signature_ok(signed: dict[str, Any], invite_content: dict[str, Any]) -> bool:
    public_keys: list[str] = []
    if isinstance(invite_content.get("public_key"), str):
        public_keys.append(invite_content["public_key"])
    for entry in invite_content.get("public_keys") or []:
        if isinstance(entry, dict) and isinstance(entry.get("public_key"), str):
            public_keys.append(entry["public_key"])
    signatures = signed.get("signatures")
    if not isinstance(signatures, dict):
        return False
    for public_key in public_keys:
        key_bytes = _decode_key(public_key)
        if key_bytes is None:
            continue
        for server, sigs in signatures.items():
            if not isinstance(sigs, dict):
                continue
            for key_id in sigs:
                if not isinstance(key_id, str) or not key_id.startswith("ed25519:"):
                    continue
                try:
                    verify_key = decode_verify_key_bytes(key_id, key_bytes)
                    verify_signed_json(signed, server, verify_key)
                except (SignatureVerifyException, ValueError, TypeError):
                    continue
                return True
    return False


def _decode_key(public_key: str) -> bytes | None:
    # decode_base64 accepts both the standard and the URL-safe alphabet,
    # either of which identity servers may publish.
    try:
        key = decode_base64(public_key)
    except Exception:  # binascii.Error, UnicodeEncodeError
        return None
    return key if len(key) == 32 else None
