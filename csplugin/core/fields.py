"""Every cryoSPARC field and RELION label csplugin reads or writes, declared once.

Like RELION's ``metadata_label.h`` or pyem's ``star.Relion`` constants: code that names a
field uses these constants, so that a misspelt name is an ``AttributeError`` at import time
rather than a silently absent column. Units and numbering are documented in
:mod:`csplugin.core.conventions`; this module holds only names and the name tables.
"""

from __future__ import annotations

import numpy as np


class Cs:
    """cryoSPARC ``.cs`` field names (``slot/field``)."""

    UID = "uid"
    # blob: the particle image
    BLOB_PATH = "blob/path"
    BLOB_IDX = "blob/idx"
    BLOB_SHAPE = "blob/shape"
    BLOB_PSIZE = "blob/psize_A"
    BLOB_SIGN = "blob/sign"
    BLOB_IMPORT_SIG = "blob/import_sig"
    # ctf
    CTF_TYPE = "ctf/type"
    CTF_EXP_GROUP = "ctf/exp_group_id"
    CTF_ACCEL_KV = "ctf/accel_kv"
    CTF_CS_MM = "ctf/cs_mm"
    CTF_AMP_CONTRAST = "ctf/amp_contrast"
    CTF_DF1 = "ctf/df1_A"
    CTF_DF2 = "ctf/df2_A"
    CTF_DF_ANGLE = "ctf/df_angle_rad"
    CTF_PHASE_SHIFT = "ctf/phase_shift_rad"
    CTF_SCALE = "ctf/scale"
    CTF_BFACTOR = "ctf/bfactor"
    # alignments2D
    A2D_POSE = "alignments2D/pose"
    A2D_SHIFT = "alignments2D/shift"
    A2D_PSIZE = "alignments2D/psize_A"
    A2D_CLASS = "alignments2D/class"
    A2D_CLASS_POSTERIOR = "alignments2D/class_posterior"
    A2D_SPLIT = "alignments2D/split"
    A2D_NUM_PARTICLES = "alignments2D/num_particles"
    # alignments3D
    A3D_POSE = "alignments3D/pose"
    A3D_SHIFT = "alignments3D/shift"
    A3D_PSIZE = "alignments3D/psize_A"
    A3D_CLASS = "alignments3D/class"
    A3D_CLASS_POSTERIOR = "alignments3D/class_posterior"
    A3D_SPLIT = "alignments3D/split"
    A3D_ERROR = "alignments3D/error"
    # location (picking)
    LOC_MICROGRAPH_UID = "location/micrograph_uid"
    LOC_MICROGRAPH_PATH = "location/micrograph_path"
    LOC_MICROGRAPH_SHAPE = "location/micrograph_shape"
    LOC_CENTER_X = "location/center_x_frac"
    LOC_CENTER_Y = "location/center_y_frac"
    LOC_EXP_GROUP = "location/exp_group_id"
    LOC_MICROGRAPH_PSIZE = "location/micrograph_psize_A"
    # filament (helical)
    FIL_UID = "filament/filament_uid"
    FIL_POSE = "filament/filament_pose"
    # csplugin's own: RELION class numbers of a .star whose particles include class 0
    # ("no class"), which cryoSPARC's 0-based unsigned alignments2D/class cannot hold.
    CSPLUGIN_RELION_CLASS = "csplugin/relion_class_number"


class Relion:
    """RELION STAR labels."""

    IMAGE_NAME = "rlnImageName"
    MICROGRAPH_NAME = "rlnMicrographName"
    COORDINATE_X = "rlnCoordinateX"
    COORDINATE_Y = "rlnCoordinateY"
    # pose
    ANGLE_ROT = "rlnAngleRot"
    ANGLE_TILT = "rlnAngleTilt"
    ANGLE_PSI = "rlnAnglePsi"
    ANGLE_PSI_PRIOR = "rlnAnglePsiPrior"
    ANGLE_TILT_PRIOR = "rlnAngleTiltPrior"
    ANGLE_ROT_PRIOR = "rlnAngleRotPrior"
    ORIGIN_X = "rlnOriginX"
    ORIGIN_Y = "rlnOriginY"
    ORIGIN_X_ANGST = "rlnOriginXAngst"
    ORIGIN_Y_ANGST = "rlnOriginYAngst"
    CLASS_NUMBER = "rlnClassNumber"
    MAX_VALUE_PROB = "rlnMaxValueProbDistribution"
    RANDOM_SUBSET = "rlnRandomSubset"
    # optics
    OPTICS_GROUP = "rlnOpticsGroup"
    OPTICS_GROUP_NAME = "rlnOpticsGroupName"
    IMAGE_PIXEL_SIZE = "rlnImagePixelSize"
    IMAGE_SIZE = "rlnImageSize"
    IMAGE_DIMENSIONALITY = "rlnImageDimensionality"
    CTF_PREMULTIPLIED = "rlnCtfDataAreCtfPremultiplied"
    MAGNIFICATION = "rlnMagnification"
    DETECTOR_PIXEL_SIZE = "rlnDetectorPixelSize"
    # ctf
    VOLTAGE = "rlnVoltage"
    SPHERICAL_ABERRATION = "rlnSphericalAberration"
    AMPLITUDE_CONTRAST = "rlnAmplitudeContrast"
    DEFOCUS_U = "rlnDefocusU"
    DEFOCUS_V = "rlnDefocusV"
    DEFOCUS_ANGLE = "rlnDefocusAngle"
    PHASE_SHIFT = "rlnPhaseShift"
    CTF_BFACTOR = "rlnCtfBfactor"
    CTF_SCALEFACTOR = "rlnCtfScalefactor"
    # helical
    HELICAL_TUBE_ID = "rlnHelicalTubeID"
    # csplugin's own column carrying cryoSPARC's uid through a .star file; RELION 3.1
    # accepts it as an unknown label (warns and drops it when *it* rewrites the file).
    CSPLUGIN_UID = "rlnCsPluginUid"
    # class-average files
    REFERENCE_IMAGE = "rlnReferenceImage"
    CLASS_DISTRIBUTION = "rlnClassDistribution"
    CLASS_SELECTION_SCORE = "rlnClassSelectionScore"
    CLASS_PARTICLE_COUNT = "rlnClassParticleCount"
    SCALE_GROUP_NAME = "rlnGroupName"  # RELION 3.0 scale-correction groups
    # tomography (files csplugin recognises and refuses)
    TOMO_PREFIX = "rlnTomo"
    TOMO_SUBTOMOS_ARE_2D_STACKS = "rlnTomoSubTomosAre2DStacks"
    TOMO_NAME = "rlnTomoName"
    TOMO_PARTICLE_NAME = "rlnTomoParticleName"
    TOMO_PARTICLES_FILE = "rlnTomoParticlesFile"
    TOMO_TILT_SERIES_STAR_FILE = "rlnTomoTiltSeriesStarFile"
    TOMO_NOMINAL_STAGE_TILT_ANGLE = "rlnTomoNominalStageTiltAngle"
    TOMO_X_TILT = "rlnTomoXTilt"
    TOMO_Y_TILT = "rlnTomoYTilt"
    COORDINATE_Z = "rlnCoordinateZ"
    CENTERED_COORDINATE_Z_ANGST = "rlnCenteredCoordinateZAngst"
    ORIGIN_Z = "rlnOriginZ"
    ORIGIN_Z_ANGST = "rlnOriginZAngst"
    CTF_IMAGE = "rlnCtfImage"
    # other RELION files (pipeline, jobs, micrographs, post-processing, MTF)
    PIPELINE_NODE_NAME = "rlnPipeLineNodeName"
    PIPELINE_NODE_TYPE = "rlnPipeLineNodeType"
    JOB_TYPE = "rlnJobType"
    JOB_TYPE_LABEL = "rlnJobTypeLabel"
    MICROGRAPH_MOVIE_NAME = "rlnMicrographMovieName"
    MICROGRAPH_COORDINATES = "rlnMicrographCoordinates"
    MICROGRAPH_SHIFT_X = "rlnMicrographShiftX"
    MOTION_MODEL_VERSION = "rlnMotionModelVersion"
    EXPERIMENTAL_DATA_STAR_FILE = "rlnExperimentalDataStarFile"
    FINAL_RESOLUTION = "rlnFinalResolution"
    MTF_VALUE = "rlnMtfValue"


#: CTF mapping: (cryoSPARC field, RELION label, internal column, cryoSPARC -> internal factor).
CTF_FIELDS: tuple[tuple[str, str, str, float], ...] = (
    (Cs.CTF_DF1, Relion.DEFOCUS_U, "defocus_u", 1.0),
    (Cs.CTF_DF2, Relion.DEFOCUS_V, "defocus_v", 1.0),
    (Cs.CTF_DF_ANGLE, Relion.DEFOCUS_ANGLE, "defocus_angle", 180 / np.pi),
    (Cs.CTF_ACCEL_KV, Relion.VOLTAGE, "voltage", 1.0),
    (Cs.CTF_CS_MM, Relion.SPHERICAL_ABERRATION, "cs", 1.0),
    (Cs.CTF_AMP_CONTRAST, Relion.AMPLITUDE_CONTRAST, "amplitude_contrast", 1.0),
    (Cs.CTF_PHASE_SHIFT, Relion.PHASE_SHIFT, "phase_shift", 180 / np.pi),
    (Cs.CTF_BFACTOR, Relion.CTF_BFACTOR, "bfactor", 1.0),
    (Cs.CTF_SCALE, Relion.CTF_SCALEFACTOR, "ctf_scale", 1.0),
)
#: RELION labels that belong in data_optics when writing RELION 3.1.
OPTICS_LABELS = (Relion.VOLTAGE, Relion.SPHERICAL_ABERRATION, Relion.AMPLITUDE_CONTRAST)
#: Optics-group name prefix that carries cryoSPARC's ctf/exp_group_id through a .star file.
GROUP_NAME = "exp_group_"
#: RELION pose labels replaced by what csplugin writes.
RELION_POSE_LABELS = (Relion.ANGLE_PSI, Relion.ORIGIN_X, Relion.ORIGIN_Y, Relion.ORIGIN_X_ANGST,
                      Relion.ORIGIN_Y_ANGST)
#: RELION's ZYZ Euler angles of a 3D pose (degrees).
RELION_EULER_LABELS = (Relion.ANGLE_ROT, Relion.ANGLE_TILT, Relion.ANGLE_PSI)
#: Fields of an in-plane (2D) alignment that must come together.
ALIGNMENTS2D_REQUIRED = (Cs.A2D_POSE, Cs.A2D_SHIFT)
#: Fields of a 3D alignment that must come together.
ALIGNMENTS3D_REQUIRED = (Cs.A3D_POSE, Cs.A3D_SHIFT)
