"""Records kept in memory deflated against a dictionary of their own shape.

A decision is about a kilobyte of JSON, most of it field names, reason-code
prefixes and sentence patterns that every decision repeats. Kept as parsed
dictionaries, a million users' decisions would take gigabytes; deflated against a
preset dictionary that holds the repeated parts they take a quarter of their JSON
size, and a user's whole history inflates in well under a millisecond when
someone looks the user up.

The dictionary only has to match what this process wrote: records are packed and
unpacked by the same process and never stored, so it may change freely.
"""

from __future__ import annotations

import zlib

_WINDOW_BITS = -12  # raw deflate, 4 KiB window: the dictionary and a record stay in reach
_LEVEL = 6

# The parts of decision and alert records that repeat, the most common last (deflate
# codes nearer matches in fewer bits).
DICTIONARY = b"".join(
    (
        b'{"kind":"fraud_alert","alert_id":"a-","event_id":"","user_id":"u-","ts":17,',
        b'"score":0.5,"reasons":["device.signups","velocity.events_per_minute",',
        b'"purchase.tiny_burst","redemption.foreign","account.related","anomaly.isolated"],',
        b'"evidence":{"device.signups":"accounts signed up on device in 24 h"},',
        b'"related_users":["u-"],"program":"retail-loyalty"}',
        b'"links":[{"kind":"device","accounts_24h":1,"signups_24h":1},{"kind":"net",',
        b'"accounts_24h":1,"signups_24h":1,"same_ip_24h":1,"related":["u-"]}],',
        b'"hold":"pending","related":[],"arm":null,"consent":{"personalization":true,',
        b'"marketing":true}}',
        b"No reward: nothing is eligible: Held for review: fraud risk ",
        b"highest priority among 2 eligible: propensity 0.150 x value 1.00 x lever 1.00 = ",
        b"the only eligible reward: ; not offered: (rule once-a-day failed), ",
        b"(rule has-purchased failed), (rule loyal-spender failed).",
        b'"skip.welcome-points:rule.first-event:failed","skip.bonus-points:rule.once-a-day:',
        b'failed","skip.free-shipping:rule.has-purchased:failed","skip.discount-10:rule.',
        b'loyal-spender:failed","skip.cashback:rule.min-basket:failed",',
        b'"feature.kind_redeem_rate:+1.20","feature.engagement:-0.40",',
        b'"budget.total_left:24310.55","budget.1d_left:1180.20","budget.7d_left:6180.20",',
        b'"budget.per_user_left:190.00","fraud.risk:0.00","fraud.held","policy.pending",',
        b'"trigger.not_a_trigger","outcome.redeemed","policy.nothing_eligible",',
        b'{"decision_id":"d-","event_id":"ev-","user_id":"u-","ts":17,"action":null,',
        b'"channel":"web","value":1.0,"cost":1.0,"propensity":1.0,"risk":0.0,',
        b'"status":"none","reasons":["policy.exploit","rule.adult:passed","budget:ok",',
        b'"explanation":"Granted bonus-points (worth 1.00 EUR) via web: ',
        b'"model_version":"retail-loyalty@00000000/lr+0","program":"retail-loyalty",',
        b'"kind":"decision",',
    )
)


def pack(document: bytes) -> bytes:
    """The in-memory form of a record's JSON ``document``."""
    deflate = zlib.compressobj(
        _LEVEL, zlib.DEFLATED, _WINDOW_BITS, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY
    )
    return deflate.compress(document) + deflate.flush()


def unpack(packed: bytes) -> bytes:
    """The JSON document :func:`pack` was given."""
    inflate = zlib.decompressobj(_WINDOW_BITS, DICTIONARY)
    return inflate.decompress(packed) + inflate.flush()
