// The study's own testbed, as the GÉANT Testbeds Service describes one (GTS User & Resource
// Guide v2.0, section 4.1): a VM at each of the four locations, and a link between every two.
// GTS links carry no delay: pytest-overlay emulates each with the RTT the study measured
// between its two locations (the same as geant.yaml's). Load it with --topology geant.dsl.
type Geant {
	description = "GÉANT four-site full mesh (Amsterdam, Bratislava, Ljubljana, Milan)"

	host { id="AMS" location="AMS" port { id="toMIL" } port { id="toLJU" } port { id="toBRA" } }
	host { id="BRA" location="BRA" port { id="toAMS" } port { id="toMIL" } port { id="toLJU" } }
	host { id="LJU" location="LJU" port { id="toAMS" } port { id="toMIL" } port { id="toBRA" } }
	host { id="MIL" location="MIL" port { id="toAMS" } port { id="toLJU" } port { id="toBRA" } }

	link { id="AMS_MIL" port { id="src" } port { id="dst" } }
	link { id="AMS_LJU" port { id="src" } port { id="dst" } }
	link { id="AMS_BRA" port { id="src" } port { id="dst" } }
	link { id="MIL_LJU" port { id="src" } port { id="dst" } }
	link { id="MIL_BRA" port { id="src" } port { id="dst" } }
	link { id="BRA_LJU" port { id="src" } port { id="dst" } }

	adjacency AMS.toMIL, AMS_MIL.src
	adjacency MIL.toAMS, AMS_MIL.dst
	adjacency AMS.toLJU, AMS_LJU.src
	adjacency LJU.toAMS, AMS_LJU.dst
	adjacency AMS.toBRA, AMS_BRA.src
	adjacency BRA.toAMS, AMS_BRA.dst
	adjacency MIL.toLJU, MIL_LJU.src
	adjacency LJU.toMIL, MIL_LJU.dst
	adjacency MIL.toBRA, MIL_BRA.src
	adjacency BRA.toMIL, MIL_BRA.dst
	adjacency BRA.toLJU, BRA_LJU.src
	adjacency LJU.toBRA, BRA_LJU.dst
}
