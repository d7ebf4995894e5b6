// A sum over the 256 invocations of a workgroup (local_size_x = 256), returned to every invocation: the norm
// kernels (group_norm.comp, layer_norm.comp) reduce their statistics with it.
shared float part[256];

float workgroup_sum(float v) {
    uint l = gl_LocalInvocationID.x;
    part[l] = v;
    barrier();
    for (uint s = 128u; s > 0u; s >>= 1) {
        if (l < s) part[l] += part[l + s];
        barrier();
    }
    float total = part[0];
    barrier();
    return total;
}
