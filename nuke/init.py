# vst for Nuke, run at start-up in every mode (GUI, `nuke -x`, `nuke -t`): registers the render
# callback that stylizes the frames a render needs, so scripts with the node render on a farm.
import vst_nuke.farm

vst_nuke.farm.register()
