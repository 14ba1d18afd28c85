"""The retrieval system: online feature reads, context assembly, chat, rendered datasets, the Tecton
wire format."""
