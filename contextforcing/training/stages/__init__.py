"""The training stages of Context Forcing, registered by name for `contextforcing train STAGE`.

teacher  context teacher: flow matching in the student's memory layout, with error recycling
ode      ODE pairs from the multi-step teacher, regression of the causal student
dmd      Stage 1: DMD on ~21-frame self-rollouts
cdmd     Stage 2: Contextual DMD on long self-rollouts, the context teacher as real score
"""

from contextforcing.training.registry import register_stage
from contextforcing.training.stages import cdmd, dmd, ode, teacher

register_stage("teacher", teacher.TeacherOptions, teacher.build)
register_stage("ode", ode.ODEOptions, ode.build)
register_stage("dmd", dmd.DMDOptions, dmd.build)
register_stage("cdmd", cdmd.CDMDOptions, cdmd.build)
