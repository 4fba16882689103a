"""`kvferry sim`: a discrete-event simulation of a disaggregated cluster that replays real
traces through the router's own placement code."""
