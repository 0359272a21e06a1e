# vst for Nuke, run at GUI start-up: the node's menu entry.
import vst_nuke.node

import nuke

nuke.menu("Nodes").addMenu("vst").addCommand("vst Style Transfer", vst_nuke.node.create)
