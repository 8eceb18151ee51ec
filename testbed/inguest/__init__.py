"""Programs that run inside the guest, on bookworm's python3 and its standard library only.

They talk to the host through the serial console: one ``TESTBED <event> key=value ...`` line
per event (see `common.say`); the host stamps each line as it arrives.
"""
