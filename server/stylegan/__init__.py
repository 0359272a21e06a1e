"""StyleGAN2-based stylization of plates: inversion, layer swapping, style mixing, temporal smoothing.

The generator itself is `server.models.stylegan2`; `plate` turns it into a served model, and
`convert` reads NVlabs pickles without running code from them.
"""
