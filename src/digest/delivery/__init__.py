"""Delivery: the ledger and the senders that work through it.

An edition's deliveries are claimed in batches, sent, and recorded exactly once in the database:

- `deliver`: deliver one edition (settle dead senders, build the variants, send here or from a pool)
- `pool`: sender processes, one per SMTP connection, with a stop that reaches all of them
- `sender`: one sender's loop (claim -> send -> record) and how a reply is recorded
- `variants`: the render-once cache of message templates, one per category choice
- `ledger`: the store interface of the loop (`DeliveryStore`), its SQL (`SQLLedger`) and memory twins
- `journal`: acceptances not yet in the ledger, replayed after a crash
- `claims`: sender ids, sender liveness, the lease on a batch

Bounces (`bounces`) and the outbox (`outbox`: single mails such as confirmations) follow the same
ledger rules."""
