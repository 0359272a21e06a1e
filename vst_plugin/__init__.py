"""Host-side vst library: wire protocol, client, frames. Imports no torch and no imaging library."""

from vst_plugin.client import Client, Pending, ServerError, ServerUnavailable, VstError
from vst_plugin.frame import Frame, Part

__all__ = ["Client", "Frame", "Part", "Pending", "ServerError", "ServerUnavailable", "VstError"]
