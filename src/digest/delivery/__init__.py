"""Delivery: the ledger and the senders that work through it. An edition's deliveries are
claimed in batches, sent, and recorded exactly once in the database; a journal covers the time
between commits; sender processes run in a pool; bounces and the outbox (single mails such as
confirmations) go through the same ledger rules."""
