"""Mail: the message a reader gets and the wire it goes over. message (the per-variant template
with per-recipient values) -> dkim (signing); mailer (the Mailer seam) -> smtp (the pipelining
client); verp (bounce addresses) and dsn (reading bounces, the hard/soft rule)."""
