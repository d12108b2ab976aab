import type { Tier } from "./tiers";

/**
 * The image matrix: families of job images (and the agent's) built from shared bases, with the
 * version axes that name them. Infra builds and pushes exactly these; the runtime picks one per job.
 */
export const IMAGE_FAMILIES = ["cpu", "ml-cpu", "ml-cuda", "agent", "builder"] as const;
export type ImageFamily = (typeof IMAGE_FAMILIES)[number];
/**
 * The families jobs run in (the agent image runs the agent, never a job; the builder image holds the pip
 * that job environments are built with, mounted into a job image's container, and is never run).
 */
export const JOB_IMAGE_FAMILIES = ["cpu", "ml-cpu", "ml-cuda"] as const satisfies readonly ImageFamily[];
export type JobImageFamily = (typeof JOB_IMAGE_FAMILIES)[number];

export interface VersionAxes {
  readonly python?: string;
  readonly torch?: string;
  readonly cuda?: string;
  readonly node?: string;
  /** The pip the builder ships (Debian trixie's). */
  readonly pip?: string;
}

export interface ImageFamilySpec {
  readonly family: ImageFamily;
  readonly description: string;
  /** The Dockerfile, relative to the repository root, which is the build context (see .dockerignore). */
  readonly dockerfile: string;
  /** What `BASE_IMAGE` is: an upstream image, or another family of the matrix built first. */
  readonly base: { readonly image: string } | { readonly family: ImageFamily };
  /** Files and directories (from the repository root) whose content the image is built from. */
  readonly inputs: readonly string[];
  /** Upstream image of a build stage other than the base (`BUILDER_IMAGE`), where the Dockerfile has one. */
  readonly builder?: string;
  readonly axes: VersionAxes;
  /** True when every package comes from Debian's archive, so it builds with no image registry. */
  readonly buildsOffline: boolean;
  readonly gpu: boolean;
  /** Whether jobs run in it (the agent image runs the agent, never a job). */
  readonly runsJobs: boolean;
}

export const DEBIAN_BASE = "debian:trixie-slim";
/** NVIDIA's smallest CUDA image: PyTorch's wheels bring their own cuDNN and cuBLAS, so no second copy. */
export const CUDA_BASE = "nvidia/cuda:12.6.3-base-ubuntu24.04";

export const IMAGE_MATRIX: Readonly<Record<ImageFamily, ImageFamilySpec>> = {
  cpu: {
    family: "cpu",
    description: "Python with numpy, scipy, pandas, scikit-learn, matplotlib, seaborn and tqdm",
    dockerfile: "images/cpu/Dockerfile",
    inputs: ["images/cpu", "images/lib", "images/runner"],
    base: { image: DEBIAN_BASE },
    axes: { python: "3.13" },
    buildsOffline: true,
    gpu: false,
    runsJobs: true,
  },
  "ml-cpu": {
    family: "ml-cpu",
    description:
      "the cpu image plus PyTorch for CPU, torchvision, torchaudio, safetensors, tiktoken and sentencepiece",
    dockerfile: "images/ml-cpu/Dockerfile",
    inputs: ["images/ml-cpu", "images/lib", "images/runner"],
    base: { family: "cpu" },
    builder: DEBIAN_BASE,
    axes: { python: "3.13", torch: "2.6" },
    buildsOffline: true,
    gpu: false,
    runsJobs: true,
  },
  "ml-cuda": {
    family: "ml-cuda",
    description: "CUDA runtime with PyTorch for CUDA, what ml-cpu adds to it and the scientific Python stack",
    dockerfile: "images/ml-cuda/Dockerfile",
    inputs: ["images/ml-cuda", "images/lib", "images/runner"],
    base: { image: CUDA_BASE },
    axes: { python: "3.12", torch: "2.6", cuda: "12.6" },
    buildsOffline: false,
    gpu: true,
    runsJobs: true,
  },
  agent: {
    family: "agent",
    description: "Node.js and the Crucible runtime: the agent every node runs",
    dockerfile: "images/agent/Dockerfile",
    inputs: [
      "images/agent",
      "images/lib",
      "runtime/src",
      "runtime/templates",
      "runtime/package.json",
      "runtime/tsconfig.build.json",
      "package-lock.json",
    ],
    base: { image: DEBIAN_BASE },
    axes: { node: "20" },
    buildsOffline: true,
    gpu: false,
    runsJobs: false,
  },
  builder: {
    family: "builder",
    description: "pip, mounted into a job image's container to build a job environment",
    dockerfile: "images/builder/Dockerfile",
    inputs: ["images/builder"],
    base: { image: DEBIAN_BASE },
    axes: { pip: "25.1" },
    buildsOffline: true,
    gpu: false,
    runsJobs: false,
  },
};

/** The tag of a family, derived from its axes: e.g. `torch2.6-cu12.6-py3.12`. */
export function imageTag(family: ImageFamily): string {
  const { python, torch, cuda, node, pip } = IMAGE_MATRIX[family].axes;
  const parts = [
    pip && `pip${pip}`,
    torch && `torch${torch}`,
    cuda && `cu${cuda}`,
    python && `py${python}`,
    node && `node${node}`,
  ].filter((p): p is string => Boolean(p));
  return parts.join("-");
}

/** The local reference of a family's image, e.g. `crucible/ml-cpu:torch2.6-py3.13`. */
export function imageRef(family: ImageFamily, repositoryPrefix = "crucible"): string {
  return `${repositoryPrefix}/${family}:${imageTag(family)}`;
}

/** The `--build-arg`s of a family: its base (and builder) images and its version axes. */
export function buildArgs(family: ImageFamily, repositoryPrefix = "crucible"): Record<string, string> {
  const { base, builder, axes } = IMAGE_MATRIX[family];
  const args: Record<string, string> = {
    BASE_IMAGE: "image" in base ? base.image : imageRef(base.family, repositoryPrefix),
    ...(builder && { BUILDER_IMAGE: builder }),
  };
  const names = {
    python: "PYTHON_VERSION",
    torch: "TORCH_VERSION",
    cuda: "CUDA_VERSION",
    node: "NODE_VERSION",
    pip: "PIP_VERSION",
  };
  for (const [axis, name] of Object.entries(names)) {
    const value = axes[axis as keyof VersionAxes];
    if (value) args[name] = value;
  }
  return args;
}

/** Upstream images a family's build pulls (its base when that is not a family, and its builder). */
export function upstreamImages(family: ImageFamily): string[] {
  const { base, builder } = IMAGE_MATRIX[family];
  return [...("image" in base ? [base.image] : []), ...(builder ? [builder] : [])];
}

/** Families in an order where each one's base family is built before it. */
export function buildOrder(families: readonly ImageFamily[] = IMAGE_FAMILIES): ImageFamily[] {
  const ordered: ImageFamily[] = [];
  const visit = (family: ImageFamily): void => {
    if (ordered.includes(family)) return;
    const { base } = IMAGE_MATRIX[family];
    if ("family" in base) visit(base.family);
    ordered.push(family);
  };
  families.forEach(visit);
  return ordered;
}

/** The families a tier's nodes run jobs in: CUDA on GPU tiers, the CPU families elsewhere. */
export function tierImageFamilies(tier: Pick<Tier, "gpu">): readonly JobImageFamily[] {
  return tier.gpu ? ["ml-cuda"] : ["cpu", "ml-cpu"];
}

/** Why a tier's nodes do not run jobs in `family`, or undefined when they do. */
export function imageFamilyRefusal(
  tier: Pick<Tier, "gpu" | "name">,
  family: JobImageFamily,
): string | undefined {
  const families = tierImageFamilies(tier);
  return families.includes(family)
    ? undefined
    : `imageFamily must be one of ${families.join(", ")} on tier ${tier.name}, got "${family}"`;
}

/** The family a job runs in: CUDA on GPU tiers, PyTorch on CPU when the code needs it, else the slim one. */
export function jobImageFamily(tier: Pick<Tier, "gpu">, needs: { readonly torch: boolean }): JobImageFamily {
  if (tier.gpu) return "ml-cuda";
  return needs.torch ? "ml-cpu" : "cpu";
}
