"""RMNet configuration: every option and its default. Edit the dataset paths for your machine.

Options can also be changed without editing this file:
    python runner.py --cfg my_config.py            (a copy of this file, or a JSON file of overrides)
    python runner.py --set TEST.MEMORIZE_EVERY 3 TEST.FLIP_LR True
"""
from easydict import EasyDict as edict

__C = edict()
cfg = __C

#
# Dataset roots (official layouts, see README "Datasets")
#
__C.DATASETS = edict()
__C.DATASETS.DAVIS = edict()
__C.DATASETS.DAVIS.ROOT = './datasets/DAVIS'             # DAVIS 2017 train/val (+ test-dev folder below)
__C.DATASETS.DAVIS.TEST_DEV_ROOT = './datasets/DAVIS-test-dev'
__C.DATASETS.DAVIS.RESOLUTION = '480p'
__C.DATASETS.DAVIS.TEST_SPLIT = 'val'                     # train | val | test-dev
__C.DATASETS.DAVIS.FLOW_ROOT = './datasets/DAVIS/OpticalFlows'   # <seq>/%05d.flo teacher flows
__C.DATASETS.DAVIS2016 = edict()
__C.DATASETS.DAVIS2016.ROOT = './datasets/DAVIS'          # DAVIS 2017 folder holds the 2016 sequences
__C.DATASETS.DAVIS2016.RESOLUTION = '480p'
__C.DATASETS.DAVIS2016.TEST_SPLIT = 'val'
__C.DATASETS.DAVIS2016.FLOW_ROOT = './datasets/DAVIS/OpticalFlows'   # the flows of the DAVIS folder
__C.DATASETS.YOUTUBE_VOS = edict()
__C.DATASETS.YOUTUBE_VOS.ROOT = './datasets/YouTubeVOS'   # holds train/ valid/ test/ (+ *_all_frames/)
__C.DATASETS.YOUTUBE_VOS.TEST_SPLIT = 'valid'
__C.DATASETS.YOUTUBE_VOS.FLOW_ROOT = './datasets/YouTubeVOS/train/OpticalFlows'
__C.DATASETS.YOUTUBE_VOS_2019 = edict()
__C.DATASETS.YOUTUBE_VOS_2019.ROOT = './datasets/YouTubeVOS2019'
__C.DATASETS.YOUTUBE_VOS_2019.TEST_SPLIT = 'valid'
__C.DATASETS.YOUTUBE_VOS_2019.FLOW_ROOT = './datasets/YouTubeVOS2019/train/OpticalFlows'
__C.DATASETS.ECSSD = edict()
__C.DATASETS.ECSSD.IMAGE_DIR = './datasets/ECSSD/images'
__C.DATASETS.ECSSD.MASK_DIR = './datasets/ECSSD/ground_truth_mask'
__C.DATASETS.MSRA10K = edict()
__C.DATASETS.MSRA10K.IMAGE_DIR = './datasets/MSRA10K/Imgs'
__C.DATASETS.MSRA10K.MASK_DIR = './datasets/MSRA10K/Imgs'
__C.DATASETS.PASCAL_VOC = edict()
__C.DATASETS.PASCAL_VOC.IMAGE_DIR = './datasets/VOC2012/JPEGImages'
__C.DATASETS.PASCAL_VOC.MASK_DIR = './datasets/VOC2012/SegmentationObject'
__C.DATASETS.MSCOCO = edict()
__C.DATASETS.MSCOCO.IMAGE_DIR = './datasets/COCO/train2017'
__C.DATASETS.MSCOCO.MASK_DIR = './datasets/COCO/train2017_masks'
__C.DATASETS.ADE20K = edict()
__C.DATASETS.ADE20K.IMAGE_DIR = './datasets/ADE20K/images/training'
__C.DATASETS.ADE20K.MASK_DIR = './datasets/ADE20K/instances/training'

#
# Which datasets to use
#
__C.DATASET = edict()
# Pretraining: ['ECSSD', 'PASCAL_VOC', 'MSRA10K', 'MSCOCO']; main training: ['YOUTUBE_VOS', 'DAVISx5'].
# A suffix xN repeats a dataset N times (N < 1 samples a fraction); DAVIS_FRAMES uses every DAVIS
# frame as a static image.
__C.DATASET.TRAIN_DATASET = ['YOUTUBE_VOS', 'DAVISx5']
__C.DATASET.VAL_DATASET = 'DAVIS'                         # empty: no validation while training
__C.DATASET.VAL_SPLIT = 'val'
__C.DATASET.VAL_VIDEOS = []                               # empty: the whole validation split
__C.DATASET.TEST_DATASET = 'DAVIS'                        # DAVIS | DAVIS2016 | YOUTUBE_VOS | YOUTUBE_VOS_2019

#
# Constants
#
__C.CONST = edict()
__C.CONST.N_WORKERS = 8                                  # loading processes per GPU (any count gives the same clips)
__C.CONST.IGNORE_IDX = 255
__C.CONST.DATASET_MEAN = [0.485, 0.456, 0.406]
__C.CONST.DATASET_STD = [0.229, 0.224, 0.225]
__C.CONST.EXP_NAME = ''                                   # empty: a timestamp
__C.CONST.RNG_SEED = 0
__C.CONST.WEIGHTS = ''

#
# Directories
#
__C.DIR = edict()
__C.DIR.OUT_PATH = './output'

#
# Networks
#
__C.NETWORK = edict()
__C.NETWORK.REGION_PROB_THRESHOLD = 0.5                   # pixels >= this belong to an object's box
__C.NETWORK.REGION_MIN_PIXELS = 10                        # fewer pixels: the box is the whole image
__C.NETWORK.REGION_MARGIN = 64                            # the box grows by this many pixels per side
__C.NETWORK.USE_CUDA_OPS = True                           # build/use the CUDA kernels for CUDA tensors

#
# Train
#
__C.TRAIN = edict()
__C.TRAIN.NETWORK = 'RMNet'                               # RMNet | TinyFlowNet
__C.TRAIN.BATCH_SIZE = 4                                  # global batch (split over GPUs)
__C.TRAIN.N_EPOCHS = 200
__C.TRAIN.N_MAX_OBJECTS = 3
__C.TRAIN.N_MAX_FRAMES = 3
__C.TRAIN.MEMORIZE_EVERY = 1
__C.TRAIN.LEARNING_RATE = 1e-5
__C.TRAIN.BETAS = (0.9, 0.999)
__C.TRAIN.WEIGHT_DECAY = 0
__C.TRAIN.MAX_FRAME_STEPS = 20                            # the frame step grows to this
__C.TRAIN.EFFECTIVE_EPOCH = 75                            # from here a good epoch holds the step at 1
__C.TRAIN.EFFECTIVE_JF = 0.745
__C.TRAIN.EFFECTIVE_HOLD_EPOCHS = 3
__C.TRAIN.FREEZE_BN = True                                # BatchNorm in eval mode (published)
__C.TRAIN.SYNC_BN = False
__C.TRAIN.PRECISION = 'fp32'                              # fp32 | bf16 | fp16 (autocast)
__C.TRAIN.PRETRAINED_BACKBONE = True                      # ImageNet ResNet-50 from torchvision
__C.TRAIN.SAVE_FREQ = 10                                  # keep a numbered checkpoint every N epochs
__C.TRAIN.VISUALIZE_EVERY = 100                           # TensorBoard images every N steps
__C.TRAIN.LOG_EVERY = 20                                  # read the losses back from the GPU every N steps
__C.TRAIN.CHANNELS_LAST = True                            # NHWC weights and activations on a GPU (speed only)
__C.TRAIN.CUDNN_BENCHMARK = True                          # cuDNN picks the fastest kernels for the crop size
__C.TRAIN.CUDA_GRAPHS = True                              # one GPU, fp32/bf16: replay the step as a CUDA graph (speed only)
__C.TRAIN.KEPT_GRAPHS = 32                               # captured steps kept, one per batch shape and object total
__C.TRAIN.RESUME = ''                                     # checkpoint to continue from (or --resume)
__C.TRAIN.AUGMENTATION = edict()
__C.TRAIN.AUGMENTATION.RESIZE_SIZE = 480                  # short side
__C.TRAIN.AUGMENTATION.RESIZE_KEEP_RATIO = True
__C.TRAIN.AUGMENTATION.AFFINE_IMAGE_DEGREES = 20
__C.TRAIN.AUGMENTATION.AFFINE_IMAGE_SCALE = (0.9, 1.1)
__C.TRAIN.AUGMENTATION.AFFINE_IMAGE_SHEARS = 10
__C.TRAIN.AUGMENTATION.AFFINE_VIDEO_DEGREES = 15
__C.TRAIN.AUGMENTATION.AFFINE_VIDEO_SCALE = (1.0, 1.3)
__C.TRAIN.AUGMENTATION.AFFINE_VIDEO_SHEARS = 10
__C.TRAIN.AUGMENTATION.AFFINE_FRAME_FILL_COLOR = (255, 255, 255)
__C.TRAIN.AUGMENTATION.AFFINE_MASK_FILL_COLOR = 255
__C.TRAIN.AUGMENTATION.CROP_SIZE = 465
__C.TRAIN.AUGMENTATION.BRIGHTNESS = (0.97, 1.03)

#
# Test
#
__C.TEST = edict()
__C.TEST.N_MAX_OBJECTS = 10
__C.TEST.VIDEO_SHORT_SIDE = 480                           # own videos: short side the networks run at (0: input size)
__C.TEST.MEMORIZE_EVERY = 5
__C.TEST.FRAME_SCALES = [1.0]
__C.TEST.FLIP_LR = False
__C.TEST.PRECISION = 'fp32'                               # fp32 (published numbers) | bf16
__C.TEST.REGIONAL_READ = True                             # False: the published dense memory read
# 0: memory keeps every kept frame (published). N > 0: keep frame 0, the frames where objects
# were given and the N most recent other kept frames (speed and GPU memory stay flat on long
# videos; a deviation, see README "Differences from the published code").
__C.TEST.MAX_MEMORY_FRAMES = 0
__C.TEST.READ_AHEAD = True                                # splits: open the next video (masks, frames, GPU warm-up) early
__C.TEST.KEPT_CAPTURES = 8                                # GPU: captured steps kept for this many (objects, size) pairs
__C.TEST.MAIN_METRIC_NAME = 'JF-Mean'
__C.TEST.VISUALIZE = False                                # write overlays beside the masks
__C.TEST.EVAL_WORKERS = 4                                 # processes scoring videos while the next runs (1: inline)
__C.TEST.EXCLUDE_VOID = False                             # False: void (255) is background (official protocol)
