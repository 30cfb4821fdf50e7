/**
 * The image config (OCI image-spec config.md, which Docker's image JSON matches): the parsed
 * and checked form {@link ImageConfig}.
 *
 * @module
 */

/** The execution parameters of an image (the config's `config` object), as the spec names them. */
export interface ImageExecConfig {
  User?: string;
  Env?: string[];
  Entrypoint?: string[];
  Cmd?: string[];
  WorkingDir?: string;
  Labels?: Record<string, string>;
  StopSignal?: string;
  /** Keys like `80/tcp`; values are empty objects. */
  ExposedPorts?: Record<string, object>;
  /** Keys are absolute paths; values are empty objects. */
  Volumes?: Record<string, object>;
}

/** An image config, checked: what vmpod reads of it (other fields are kept in `raw`). */
export interface ImageConfig {
  architecture: string;
  os: string;
  variant?: string;
  created?: string;
  author?: string;
  config: ImageExecConfig;
  rootfs: { type: 'layers'; diff_ids: string[] };
  /** The whole JSON object as parsed (history and fields vmpod does not read included). */
  raw: Record<string, unknown>;
}
