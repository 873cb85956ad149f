"""Frame flag bits as ADR/0001 stores them: what pm_arb learned of a frame when it received it.

Plain ints, not an IntFlag: they are tested on the receive path for every frame, and an
IntFlag's `&` is a Python-level call."""

FLAG_CONTROL = 0x01  # text the server sent that is not market data (PONG, INVALID OPERATION, ...)
FLAG_NOT_JSON = 0x02  # neither JSON object/array nor known control text: garbage kept as received
FLAGS_NOT_MARKET_DATA = FLAG_CONTROL | FLAG_NOT_JSON

__all__ = ["FLAG_CONTROL", "FLAG_NOT_JSON", "FLAGS_NOT_MARKET_DATA"]
