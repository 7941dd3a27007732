"""Rank TPV candidate destinations by expected turnaround seconds (staging + queue wait + run time).

The pure model (``model``), the request (``request``), the stored state rank reads (``state``) and the
placement ledger (``ledger``); ``metasched.app.ranking`` puts them together with the policies.
See docs/rank.md.
"""
