//! Device selection: one Vulkan instance, one physical device with a compute queue, its allocators.

use std::sync::Arc;

use vulkano::command_buffer::allocator::StandardCommandBufferAllocator;
use vulkano::descriptor_set::allocator::StandardDescriptorSetAllocator;
use vulkano::device::physical::{PhysicalDevice, PhysicalDeviceType};
use vulkano::device::{DeviceCreateInfo, Queue, QueueCreateInfo, QueueFlags};
use vulkano::instance::{Instance, InstanceCreateFlags, InstanceCreateInfo, InstanceExtensions};
use vulkano::memory::allocator::StandardMemoryAllocator;
use vulkano::VulkanLibrary;

use crate::error::{chain, vk, Error};

/// A Vulkan device ready to run models: the logical device, one compute queue and the allocators.
pub struct Device {
    pub(crate) device: Arc<vulkano::device::Device>,
    pub(crate) queue: Arc<Queue>,
    pub(crate) memory: Arc<StandardMemoryAllocator>,
    pub(crate) commands: Arc<StandardCommandBufferAllocator>,
    pub(crate) sets: Arc<StandardDescriptorSetAllocator>,
    name: String,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("name", &self.name).finish()
    }
}

const NO_LOADER: &str = "cannot load the Vulkan loader (libvulkan.so.1)";
const HINT: &str = "On Debian/Ubuntu run `scripts/install-vulkan.sh` (mesa-vulkan-drivers libvulkan1; Mesa's lavapipe \
                    runs Vulkan on the CPU)";

fn instance() -> Result<Arc<Instance>, Error> {
    let library = VulkanLibrary::new().map_err(|e| Error::NoDevice(format!("{NO_LOADER} ({}). {HINT}", chain(&e))))?;
    // Devices behind a portability layer (MoltenVK) are listed only when asked for.
    let portability = library.supported_extensions().khr_portability_enumeration;
    let info = InstanceCreateInfo {
        flags: if portability { InstanceCreateFlags::ENUMERATE_PORTABILITY } else { InstanceCreateFlags::empty() },
        enabled_extensions: InstanceExtensions { khr_portability_enumeration: portability, ..Default::default() },
        ..Default::default()
    };
    Instance::new(library, info).map_err(|e| {
        Error::NoDevice(format!(
            "cannot create a Vulkan instance ({}); is a Vulkan driver installed? {HINT}",
            chain(&e)
        ))
    })
}

/// The physical devices with a compute queue, in enumeration order.
fn compute_devices(instance: &Arc<Instance>) -> Result<Vec<(Arc<PhysicalDevice>, u32)>, Error> {
    let devices = instance.enumerate_physical_devices().map_err(vk("vkEnumeratePhysicalDevices"))?;
    Ok(devices
        .filter_map(|p| {
            let family = p.queue_family_properties().iter().position(|q| q.queue_flags.intersects(QueueFlags::COMPUTE));
            family.map(|f| (p, f as u32))
        })
        .collect())
}

fn describe(p: &PhysicalDevice) -> String {
    let props = p.properties();
    format!("{} ({:?}, Vulkan {})", props.device_name, props.device_type, props.api_version)
}

impl Device {
    /// Lists the devices that can run models, as `"index: name (type, Vulkan version)"`.
    pub fn list() -> Result<Vec<String>, Error> {
        let instance = instance()?;
        Ok(compute_devices(&instance)?.iter().enumerate().map(|(i, (p, _))| format!("{i}: {}", describe(p))).collect())
    }

    /// Opens a device. `selector` is an index into [`Device::list`] or a case-insensitive substring of the
    /// device name; `None` takes the first discrete GPU, else integrated, virtual, then CPU (lavapipe).
    pub fn new(selector: Option<&str>) -> Result<Device, Error> {
        let instance = instance()?;
        let devices = compute_devices(&instance)?;
        if devices.is_empty() {
            return Err(Error::NoDevice(format!("the Vulkan loader found no device with a compute queue. {HINT}")));
        }
        let chosen = match selector {
            Some(s) => {
                let by_index = s.trim().parse::<usize>().ok().and_then(|i| devices.get(i));
                let by_name = || {
                    let s = s.to_lowercase();
                    devices.iter().find(|(p, _)| p.properties().device_name.to_lowercase().contains(&s))
                };
                by_index.or_else(by_name).ok_or_else(|| Error::DeviceNotFound {
                    selector: s.into(),
                    available: devices.iter().enumerate().map(|(i, (p, _))| format!("{i}: {}", describe(p))).collect(),
                })?
            }
            None => {
                let rank = |t: PhysicalDeviceType| match t {
                    PhysicalDeviceType::DiscreteGpu => 0,
                    PhysicalDeviceType::IntegratedGpu => 1,
                    PhysicalDeviceType::VirtualGpu => 2,
                    PhysicalDeviceType::Cpu => 3,
                    _ => 4,
                };
                devices
                    .iter()
                    .min_by_key(|(p, _)| rank(p.properties().device_type))
                    .ok_or_else(|| Error::NoDevice(format!("no device with a compute queue. {HINT}")))?
            }
        };
        let (physical, family) = chosen.clone();
        let name = describe(&physical);
        let (device, mut queues) = vulkano::device::Device::new(
            physical,
            DeviceCreateInfo {
                queue_create_infos: vec![QueueCreateInfo { queue_family_index: family, ..Default::default() }],
                ..Default::default()
            },
        )
        .map_err(vk("vkCreateDevice"))?;
        let queue = queues.next().ok_or_else(|| Error::Vulkan("vkCreateDevice returned no queue".into()))?;
        Ok(Device {
            memory: Arc::new(StandardMemoryAllocator::new_default(device.clone())),
            commands: Arc::new(StandardCommandBufferAllocator::new(device.clone(), Default::default())),
            sets: Arc::new(StandardDescriptorSetAllocator::new(device.clone(), Default::default())),
            device,
            queue,
            name,
        })
    }

    /// The device's name, type and Vulkan version.
    pub fn name(&self) -> &str {
        &self.name
    }
}
